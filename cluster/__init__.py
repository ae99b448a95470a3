"""How to stand ttrain up: the local stack launcher here, cluster configs and manifests beside it."""
