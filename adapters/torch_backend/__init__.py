"""The torch executor (``--backend torch``) and its policy-sized tensor pool."""
