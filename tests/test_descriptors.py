"""The dataset descriptors the code reads hold the published figures."""

from mrw import paths
from mrw.descriptors import load_descriptor, published_size


def test_descriptors_hold_the_published_figures():
    mrw = load_descriptor("mrw")
    sizes = {s: published_size("mrw", s) for s in paths.SPLITS}
    assert sizes == {"train": 44107, "val": 1000, "test": 5000}
    assert sum(sizes.values()) == mrw["statistics"]["total_items"] == 50107
    assert [mrw["splits"][s]["avg_frames"] for s in paths.SPLITS] == [104.91, 209.04, 209.55]
    assert [mrw["splits"][s]["avg_words"] for s in paths.SPLITS] == [11.36, 15.02, 14.79]
    assert mrw["statistics"]["vocabulary_size"] == 34835
    assert published_size("mrw", "valid") == 1000
    tgif = load_descriptor("tgif")
    assert (
        sum(tgif["splits"][s]["items"] for s in paths.SPLITS) == tgif["statistics"]["total_items"]
    )
    coco = load_descriptor("coco")
    assert (
        coco["splits"]["train"]["items"]
        == coco["statistics"]["train_without_restval"] + coco["statistics"]["restval"]
    )
    for d in (mrw, tgif, coco):
        assert d["terms_of_use"] and d["citation"]["bibtex"].startswith("@")
        assert d["release"].get("url") or d["release"].get("files")
