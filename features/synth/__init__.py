"""The synthetic world: the only code that knows the generator's departments, codes and effects."""
