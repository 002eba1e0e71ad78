"""One router per resource; ``gradlab.api.app`` only includes them."""
