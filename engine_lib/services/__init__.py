"""Engine operations, one service per entity, shared by modules and the CLI."""
