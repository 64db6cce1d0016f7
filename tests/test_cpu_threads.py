"""The native loss's CPU threads (csrc/cpu/work_sharing.h): every thread count and work split gives
the reference's numbers, repeated calls give the same bits, and callers on several Python threads
at once share the helper threads safely."""

import threading

import pytest
import torch

import pdcr_ext
from conftest import requires_native
from helpers import random_features, random_ratios

pytestmark = requires_native


@pytest.fixture
def threads():
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def loss_and_grads(rows, phi, cols, phi_cols, backend="native"):
    r = rows.clone().requires_grad_()
    c = None if cols is None else cols.clone().requires_grad_()
    loss = pdcr_ext.dragsaw_loss(r, phi, c, phi_cols, tau=0.5, reduction="none", backend=backend)
    loss.backward(torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape))
    return loss.detach(), r.grad, None if c is None else c.grad


# (B, N, K): one item per image (B >= threads), and rows split into chunks (B < threads), with
# several row tiles (16) so that a chunk holds more than one.
@pytest.mark.parametrize("B, N, K", [(6, 40, 33), (1, 70, 50), (3, 100, 20)])
@pytest.mark.parametrize("cross", [True, False])
def test_every_thread_count_gives_the_reference(B, N, K, cross, threads):
    g = torch.Generator().manual_seed(B * 1000 + N)
    rows, phi = random_features(B, N, 12, generator=g), random_ratios(B, 3, N, 2, generator=g)
    cols, phi_cols = (random_features(B, K, 12, generator=g), random_ratios(B, 3, K, 2, generator=g)) \
        if cross else (None, None)
    expected = loss_and_grads(rows, phi, cols, phi_cols, backend="reference")
    for count in (1, 2, 3, 8):  # 8: more threads than this machine's cores
        threads(count)
        first = loss_and_grads(rows, phi, cols, phi_cols)
        again = loss_and_grads(rows, phi, cols, phi_cols)
        for got, same, want in zip(first, again, expected):
            if want is None:
                continue
            assert torch.equal(got, same), f"{count} threads: not reproducible"
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10, msg=f"{count} threads")


def test_callers_on_several_python_threads_at_once(threads):
    threads(2)
    g = torch.Generator().manual_seed(7)
    inputs = [(random_features(4, 48, 16, dtype=torch.float32, generator=g),
               random_ratios(4, 3, 48, 2, dtype=torch.float32, generator=g)) for _ in range(4)]
    expected = [loss_and_grads(rows, phi, None, None) for rows, phi in inputs]
    results, errors = {}, []

    def work(index):
        try:
            for _ in range(20):
                results[index] = loss_and_grads(*inputs[index], None, None)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    for index, want in enumerate(expected):
        assert torch.equal(results[index][0], want[0]) and torch.equal(results[index][1], want[1])
