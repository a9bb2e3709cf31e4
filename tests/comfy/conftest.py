"""Fixtures of the ComfyUI front-door tests."""

import pytest
from rest_framework.test import APIClient


@pytest.fixture(params=["/comfy", "/comfy/api"])
def base(request) -> str:
    """Both of ComfyUI's route prefixes (the bare one and /api), as its clients use either."""
    return request.param


@pytest.fixture
def bob(other_user) -> APIClient:
    client = APIClient()
    client.force_authenticate(other_user)
    return client
