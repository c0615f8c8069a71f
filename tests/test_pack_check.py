"""A received pack is refused before onnxruntime reads it when any file points outside the pack:
ONNX external-data traversal (CVE-2024-27318), a genai config naming another file, symlinks, extras."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge_agent.errors import UnsafePackError
from edge_agent.models.pack import MANIFEST_NAME
from edge_agent.models.store import PackStore
from edge_agent.sync.pack_check import check_pack_dir, external_data_locations


def model_with_external_data(directory: Path, location: str, *, in_attribute: bool = False) -> Path:
    """A small graph whose weight lives in an external file, then re-pointed at ``location``."""
    weight = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(64, 64), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])
    if in_attribute:  # the tensor inside a Constant node's attribute, inside an If branch
        const = helper.make_node("Constant", [], ["w"], value=weight)
        branch = helper.make_graph(
            [const], "branch", [], [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)]
        )
        cond = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
        node = helper.make_node("If", ["c"], ["y"], then_branch=branch, else_branch=branch)
        graph = helper.make_graph([node], "g", [cond, x], [y])
    else:
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [weight])
    model = helper.make_model(graph)
    path = directory / "model.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="model.onnx.data", size_threshold=0)
    loaded = onnx.load(path, load_external_data=False)
    tensors = [t for t in loaded.graph.initializer]
    for node in loaded.graph.node:
        for attr in node.attribute:
            for g in (attr.g,):
                for n in g.node:
                    tensors += [a.t for a in n.attribute]
    for tensor in tensors:
        if not tensor.external_data:  # onnx leaves attribute tensors inline; a hostile file need not
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            tensor.external_data.add(key="location", value=location)
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    path.write_bytes(loaded.SerializeToString())
    return path


def test_a_plain_external_data_file_of_the_pack_passes(tmp_path: Path) -> None:
    model_with_external_data(tmp_path, "model.onnx.data")
    assert external_data_locations(tmp_path / "model.onnx") == ["model.onnx.data"]
    check_pack_dir(tmp_path, {"model.onnx", "model.onnx.data"})


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/../../x", "other.bin", ""])
def test_external_data_leaving_the_pack_is_refused(tmp_path: Path, location: str) -> None:
    model_with_external_data(tmp_path, location)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnsafePackError, match=r"model.onnx refers to .* not a file of this pack"):
        check_pack_dir(tmp_path, {"model.onnx", "model.onnx.data"})
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_external_data_hidden_in_a_subgraph_attribute_is_found(tmp_path: Path) -> None:
    model_with_external_data(tmp_path, "../secret", in_attribute=True)
    assert external_data_locations(tmp_path / "model.onnx") == ["../secret"] * 2  # then and else
    with pytest.raises(UnsafePackError, match=r"'../secret'"):
        check_pack_dir(tmp_path, {"model.onnx"})


def test_symlink_extra_and_missing_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"a")
    os.symlink("/etc/hostname", tmp_path / "b.bin")
    with pytest.raises(UnsafePackError, match=r"b.bin: a symbolic link in the pack"):
        check_pack_dir(tmp_path, {"a.bin", "b.bin"})
    (tmp_path / "b.bin").unlink()
    (tmp_path / "extra.bin").write_bytes(b"x")
    with pytest.raises(
        UnsafePackError, match=r"extra.bin: in the pack directory but not in the signed manifest"
    ):
        check_pack_dir(tmp_path, {"a.bin"})
    (tmp_path / "extra.bin").unlink()
    with pytest.raises(UnsafePackError, match=r"c.bin: listed in the manifest but missing"):
        check_pack_dir(tmp_path, {"a.bin", "c.bin"})


def test_genai_config_naming_another_file_is_refused(tmp_path: Path) -> None:
    config = {"model": {"decoder": {"filename": "../../victim.onnx"}}}
    (tmp_path / "genai_config.json").write_text(json.dumps(config))
    with pytest.raises(UnsafePackError, match=r"genai_config.json refers to '../../victim.onnx'"):
        check_pack_dir(tmp_path, {"genai_config.json"})


def test_truncated_protobuf_is_refused_not_crashed(tmp_path: Path) -> None:
    path = model_with_external_data(tmp_path, "model.onnx.data")
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(UnsafePackError, match="malformed ONNX protobuf"):
        check_pack_dir(tmp_path, {"model.onnx", "model.onnx.data"})


@pytest.mark.slow  # the built packs
def test_every_real_pack_passes() -> None:
    packs = PackStore().list()
    assert len(packs) >= 9
    for pack in packs:
        check_pack_dir(pack.path, {MANIFEST_NAME, *(f.path for f in pack.manifest.files)})
