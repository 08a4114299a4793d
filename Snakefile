# The pipeline's rules live in workflow/; see README.md for the targets.
include: "workflow/Snakefile"
