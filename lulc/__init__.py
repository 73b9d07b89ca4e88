"""The `lulc` command line: one face over lulc_core, pipelines/ and serving/."""
