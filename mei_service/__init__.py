"""mei-service: the control plane that runs MEI generation on GPU workers."""
