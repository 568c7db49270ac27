"""Console commands: seed the embedded demo."""
