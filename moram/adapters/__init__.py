"""What every continual adapter method shares: the layer base, seeding and the one injector."""
