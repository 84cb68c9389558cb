"""What every stage shares and none owns: the error types (what a user mistake is), ORT sessions
and provider names (``runtime``), loading users' plugin files, and the progress callback type.
Nothing here imports another onnxprune folder."""
