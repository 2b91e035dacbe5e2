"""Development tools: the local stand-in for the Doppel upstream and its sample photos."""
