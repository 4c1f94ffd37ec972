"""Data: the built-in scene data set, caption sampling, webdataset shards and real benchmark loaders."""
