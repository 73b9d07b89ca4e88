"""Mapping regions and countries: the domain of the mapping pipeline (`lulc map`, `pipelines/mapping.py`).

- `plan`: AOI + time frames + model -> blocks on each UTM zone's grid, with the cost shown first.
- `blocks`: predict blocks with `lulc_core.inference.Predictor`, one COG each, resumable, a status per block.
- `assemble`: one COG per zone (GDAL VRT -> COG driver) and a STAC collection with provenance.
- `areas`: error-adjusted class areas with 95 % confidence intervals (Olofsson et al. 2014).
- `gaps`: where OSM lacks or contradicts what the model sees.
- outputs go to a local directory, a PVC or `s3://bucket/prefix` (`lulc_core.objectstore`).
"""

from lulc_core.objectstore import configure_gdal

# every mapping step may read the outputs at an s3:// location through GDAL's /vsis3/, at boto3's endpoint
configure_gdal()
