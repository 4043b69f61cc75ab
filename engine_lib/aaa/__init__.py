"""Authentication and authorization vocabulary: roles, their permissions, password hashing."""
