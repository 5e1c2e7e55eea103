"""Reference data people maintain: reason-code map, SKU catalogue, disposition policy, owner teams."""
