"""`livemig run`'s saturation warning names a dilation to rerun with."""
from cluster.cli import unsaturating_dilation


def test_the_named_dilation_covers_the_overrun_with_margin():
    for d, s in ((1.0, 0.2), (0.08, 0.5), (4.0, 0.06), (0.25, 2.0)):
        got = unsaturating_dilation(d, s)
        assert d * (1 + s) * 1.25 <= got <= d * (1 + s) * 1.25 * 1.1
