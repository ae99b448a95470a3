"""Activities hold all I/O: dataset snapshots, Ray jobs, checkpoint storage, model loading."""
