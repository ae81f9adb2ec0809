"""The codec cost model: linear in pages (so batch size and memory_scale cannot show), classes from ratios."""
import numpy as np
import pytest

from agents.encodings import cost_model
from agents.encodings.codec_bench import guest_pages
from agents.encodings.zstd_codec import ZstdPageCodec

PAGE = 4096


def test_a_batch_costs_the_sum_of_its_parts():
    costs = cost_model.load()
    z = costs.zstd_level(1)
    _, lengths = ZstdPageCodec(1).compress_pages(np.concatenate([guest_pages(c, 32) for c in cost_model.CLASSES]))
    whole = z.compress_us(lengths, costs.call_us)
    parts = sum(z.compress_us(lengths[i:i + 5], costs.call_us) for i in range(0, len(lengths), 5))
    assert whole == pytest.approx(parts)
    deltas = np.array([-1, 0, 40, 400, 4000])
    assert costs.xbzrle_encode_us(deltas) == pytest.approx(sum(costs.xbzrle_encode_us(deltas[i:i + 1]) for i in range(5)))


@pytest.mark.parametrize("cls", cost_model.CLASSES)
def test_guest_pages_are_read_as_their_class(cls):
    z = cost_model.load().zstd_level(1)
    _, lengths = ZstdPageCodec(1).compress_pages(guest_pages(cls, 64, seed=3))
    assert (z.classes_of(lengths) == cost_model.CLASSES.index(cls)).all()


def test_page_ratio_does_not_depend_on_the_batch():
    pages = guest_pages("text", 64)
    codec = ZstdPageCodec(1)
    one = sum(codec.compress_pages(pages[i:i + 1])[1][0] for i in range(64))
    assert codec.compress_pages(pages)[1].sum() == one


def test_provenance_names_machine_date_and_command():
    p = cost_model.load().provenance(5)
    assert {"date", "machine", "command", "file"} <= set(p) and p["zstd_level_charged"] in (1, 3)
