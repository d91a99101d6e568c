"""One router per concern: search, products, admin, system."""
