"""Library-wide pieces that import nothing else of lavislite."""
