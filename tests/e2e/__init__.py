"""End-to-end tests: the scheduler, ComfyUI simulators and worker daemons running together."""

import pytest

# Plain `assert`s in the shared checks report their values like the ones in the tests do.
pytest.register_assert_rewrite("tests.e2e.helpers")
