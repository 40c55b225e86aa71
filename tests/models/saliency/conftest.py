import copy

import pytest
import torch

from models.architectures import build_model


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a = a.detach().flatten().double()
    b = b.detach().flatten().double()
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return build_model("resnet18").eval()


@pytest.fixture(scope="module")
def resnet18_not_inplace(resnet18):
    """A copy without in-place ReLUs, for reference computations that need every activation intact."""
    model = copy.deepcopy(resnet18)
    for module in model.modules():
        if isinstance(module, torch.nn.ReLU):
            module.inplace = False
    return model


@pytest.fixture(scope="module")
def images96():
    torch.manual_seed(1)
    return torch.randn(2, 3, 96, 96)
