"""The MNIST model server: training on real MNIST, a versioned model repository, and an HTTP server."""
