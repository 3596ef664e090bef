"""nbgrader configuration of the cartl_kit labs; run nbgrader commands from this folder (labs/)."""

import os
import warnings

from nbformat import NotebookNode
from nbgrader.api import MissingEntry
from nbgrader.preprocessors import (CheckCellMetadata, ClearHiddenTests, ClearOutput, DeduplicateIds,
                                    OverwriteCells, OverwriteKernelspec)
from sqlalchemy.exc import SAWarning

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

c.CourseDirectory.course_id = "cartl-labs"
# An absolute root: with "." nbgrader warns "root '.' is not absolute" on every command. nbgrader reads
# this file from the folder it runs in, so this is the same folder, spelled out.
c.CourseDirectory.root = os.path.dirname(os.path.abspath(__file__))
# The experiment at the end of each lab trains a small model: allow it time when autograding.
c.ExecutePreprocessor.timeout = 600
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}


class RestoreHiddenTests(OverwriteCells):
    """nbgrader's OverwriteCells, without its false "Attribute 'checksum' ... has changed!" warnings.

    generate_assignment records each locked cell in the gradebook *with* its hidden tests (and their
    checksum), then removes the hidden tests from the release. When autograding, OverwriteCells compares
    the submitted cell with the gradebook's, finds them different in every graded cell that hides tests,
    warns that the checksum has changed and puts the gradebook's source back (that is how the hidden
    tests return; nbgrader issue #1961). Here a cell that is exactly the released one gets the gradebook's
    source back first, silently; a cell a student did change still gets the warning, and is overwritten.
    """

    def preprocess_cell(self, cell, resources, cell_index):
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        source_cell = None
        if grade_id is not None:
            try:
                source_cell = self.gradebook.find_source_cell(grade_id, self.notebook_id, self.assignment_id)
            except MissingEntry:
                pass  # OverwriteCells reports it
        if source_cell is not None and source_cell.locked:
            released = NotebookNode(source=source_cell.source)
            ClearHiddenTests(parent=self)._remove_hidden_test_region(released)
            if cell.source == released.source:
                cell.source = source_cell.source
        return super().preprocess_cell(cell, resources, cell_index)


c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, RestoreHiddenTests,
                                      CheckCellMetadata]

# nbgrader 0.9.6's Gradebook.add_submission builds the submission's rows before adding them to the
# session; SQLAlchemy 2.x (no more cascade_backrefs) then warns on autoflush that it "will not proceed"
# with an add that the explicit db.add() right after does anyway. Harmless: see labs/README.md.
warnings.filterwarnings("ignore", r"Object of type <Submitted\w+> not in session, add operation along", SAWarning,
                        r"nbgrader\.api")
