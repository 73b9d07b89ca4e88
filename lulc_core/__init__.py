"""lulc_core — the domain library of lulc.

Area grid, imagery stores, OSM sources, label rasters, statistics, datasets, the SegFormer model, training,
evaluation, model bundles, registries and inference. Imports no kfp, kserve or kubernetes; registry clients
(mlflow, neptune) are imported lazily inside their backends.
"""

__version__ = "0.1.0"
