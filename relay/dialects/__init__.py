"""The client APIs the relay serves, one small module each (see ``base``)."""
