"""Container images: their Dockerfiles and the Docker-free builder (images.ocibuild)."""
