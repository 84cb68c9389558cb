"""Everything onnxprune shows a person or a machine: terminal tables, JSON and plots."""
