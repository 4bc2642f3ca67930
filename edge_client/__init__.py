"""The edge client: runs the encoder and the bundle's noise locally, sends only features to the cloud.

It loads the manifest and the encoder only; it never opens the decoder.
"""

from edge_client.client import EdgeClient, ModelMismatchError, Prediction
from edge_client.preprocess import ImageInputError, prepare_images
from edge_client.settings import ClientSettings, RetryPolicy, TlsOptions
from edge_client.transport import RemoteCallError

__all__ = [
    "ClientSettings",
    "EdgeClient",
    "ImageInputError",
    "ModelMismatchError",
    "Prediction",
    "RemoteCallError",
    "RetryPolicy",
    "TlsOptions",
    "prepare_images",
]
