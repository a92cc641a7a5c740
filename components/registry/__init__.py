"""The model registry: references, the ledger, versions and aliases, over the local and bucket stores."""
