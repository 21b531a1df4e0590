"""The parties' network services (CA now; bank, third party and shop later) and what they share:
storage (``db``), the JSON-over-HTTPS server scaffolding (``http``), X.509 building (``pki``)."""
