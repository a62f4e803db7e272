"""Most exciting inputs: gradient ascent on the inputs of trained models.

The framework is usable on its own (``mei.methods.gradient_ascent``) and through the DataJoint table
templates in ``mei.main``. It knows nothing of the service that distributes it.
"""

__version__ = "0.1.0"
