"""The evaluation's own pieces: scenes parsed back from captions, distinct true captions, the constant baseline."""
import random

import pytest

import make_data
from train import best_model_metric, caption_metrics, distinct_counts, distinct_true_captions, parse_scene, scene_metrics


def test_every_template_names_all_six_attributes_and_parses_back():
    rng = random.Random(0)
    for _ in range(300):
        attrs = make_data.sample_attributes(rng, lambda c: True)
        want = dict(attrs, count=make_data.COUNTS[attrs["count"]])
        for text in make_data.captions(attrs, len(make_data.TEMPLATES), rng):
            assert parse_scene(text) == want, text


def test_a_caption_that_names_an_attribute_twice_or_never_does_not_count_as_right():
    scene = parse_scene("灰色背景的左边有两个大的红色圆形和蓝色圆形")  # two colours
    assert scene["colour"] is None and scene["shape"] is None and scene["count"] == "两"
    assert parse_scene("三角形")["count"] is None  # the 三 of 三角形 is not a count
    truth = [["灰色背景的左边有两个大的红色圆形"]]
    assert scene_metrics(["灰色背景的左边有两个大的红色圆形和蓝色圆形"], truth)["scene_accuracy"] == 0.0
    assert scene_metrics(["图片左边有两个大的红色圆形，背景是灰色"], truth)["scene_accuracy"] == 1.0


def test_scene_metrics_are_empty_for_captions_not_from_make_data():
    assert scene_metrics(["一只猫坐在沙发上"], [["一只猫坐在沙发上", "沙发上的猫"]]) == {}
    assert best_model_metric([["一只猫坐在沙发上", "沙发上的猫"]]) == "bleu4"
    assert best_model_metric([["图片左边有两个大的红色圆形，背景是灰色"]]) == "scene_accuracy"


def test_distinct_true_captions_groups_images_that_share_a_reference():
    refs = [["a", "b"], ["b", "c"], ["d"], ["c", "e"], ["f", "g"]]
    assert distinct_true_captions(refs) == 3  # {0, 1, 3} share b / c; {2}; {4}
    m = distinct_counts(["x", "x", "y", "z", "x"], refs)
    assert m == {"distinct_generated": 3, "distinct_true": 3, "distinct_reference_sets": 5,
                 "most_common_share": pytest.approx(0.6)}


def test_same_scene_images_count_once_as_distinct_true_captions():
    rng = random.Random(1)
    scenes = [make_data.sample_attributes(rng, lambda c: True) for _ in range(3)]
    images = [scenes[i % 3] for i in range(12)]  # 12 images, 3 scenes
    refs = [make_data.captions(a, len(make_data.TEMPLATES), rng) for a in images]
    assert distinct_true_captions(refs) == 3 and scene_metrics([r[0] for r in refs], refs)["distinct_scenes"] == 3


def test_bleu_and_cider_reward_the_right_caption_over_a_constant_one():
    refs = [["灰色背景的左边有两个大的红色圆形", "图片左边有两个大的红色圆形，背景是灰色"],
            ["白色背景的中间有一个小的蓝色菱形", "图片中间有一个小的蓝色菱形，背景是白色"],
            ["黑色背景的上面有三个大的黄色三角形", "图片上面有三个大的黄色三角形，背景是黑色"]]
    right = caption_metrics([r[0] for r in refs], refs)
    constant = caption_metrics([refs[0][0]] * 3, refs)
    assert right["bleu4"] == pytest.approx(100.0) and right["bleu4"] > constant["bleu4"] + 20
    assert right["cider"] > constant["cider"] + 1
