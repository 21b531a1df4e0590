"""Supporting services: crypto, certificates, the local purse scheme, paths, preferences."""
