import pytest
import torch

from moerec.model.dropout import Dropout


def test_dropout_zeroes_about_p_and_preserves_the_mean():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = Dropout(0.3).train()(x)
    assert (y == 0).float().mean().item() == pytest.approx(0.3, abs=0.005)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    survivors = y[y != 0]
    torch.testing.assert_close(survivors, torch.full_like(survivors, 1 / 0.7))


def test_dropout_is_the_identity_in_eval_mode_and_at_zero():
    x = torch.randn(5, 7)
    assert Dropout(0.5).eval()(x) is x
    assert Dropout(0.0).train()(x) is x


def test_gradient_flows_only_through_kept_units():
    torch.manual_seed(1)
    x = torch.ones(1000, requires_grad=True)
    y = Dropout(0.5).train()(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, y.detach())


def test_invalid_probability_is_refused():
    with pytest.raises(ValueError, match="dropout"):
        Dropout(1.0)
