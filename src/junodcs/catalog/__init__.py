"""The file catalog (DFC-like): namespace, replicas, typed metadata, provenance, datasets."""
