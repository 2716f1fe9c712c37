"""`python -m harmony_agent`: the `harmony-agent` command."""

from harmony_agent.agent.cli import main

raise SystemExit(main())
