"""The parties' servers."""
