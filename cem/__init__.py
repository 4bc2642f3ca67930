"""The shared kernel: models, datasets, the CEM entropy bound, model bundles.

Every app (training, edge_client, cloud_server, attacker) imports from here and
never from each other.
"""
