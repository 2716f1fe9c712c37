"""An OpenAI-compatible server over the agent: the Responses and Chat Completions APIs.

    from harmony_agent.agent.server import ServerConfig, create_app
    app = create_app(ServerConfig(model, model_name="gpt-oss-20b"))   # an ASGI app: uvicorn

`harmony-agent serve` runs it. Clients' function tools are declared to the model and handed back
to the client to run; the built-in python and browser run here, each conversation with its own.
"""

from .app import create_app
from .config import ServerConfig

__all__ = ["ServerConfig", "create_app"]
