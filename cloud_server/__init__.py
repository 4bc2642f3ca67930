"""The cloud service: a bundle's decoder behind gRPC, with micro-batching, health, reflection and TLS.

It loads the manifest and the decoder only; it never opens the encoder.
"""

from cloud_server.server import CloudServer, create_server
from cloud_server.settings import ServerSettings

__all__ = ["CloudServer", "ServerSettings", "create_server"]
