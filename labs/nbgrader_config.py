"""nbgrader configuration of the cartl_kit labs; run nbgrader commands from this folder (labs/)."""

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

c.CourseDirectory.course_id = "cartl-labs"
c.CourseDirectory.root = "."
# The experiment at the end of each lab trains a small model: allow it time when autograding.
c.ExecutePreprocessor.timeout = 600
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
