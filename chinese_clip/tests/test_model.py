"""The real-checkpoint paths, with tiny checkpoints saved by save_pretrained and read by from_pretrained:
--model_name_or_path (ChineseCLIP; its torchvision image processor falls back to the PIL one), a dual encoder
from a pretrained vision + text encoder, freezing a tower; pooler_output from get_*_features."""
import json

import pytest
import torch
from transformers import BertConfig, BertModel, ViTConfig, ViTModel

import train
from model import ModelArguments, build_model, embed_texts, encode_images, image_processor_for, load_trained
from train_tokenizer import train_tokenizer

TEXTS = ["白色背景上有两个红色的圆形", "黑色背景上有一个蓝色的正方形"]
SMALL = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
             intermediate_size=64, projection_dim=16)


def _step(model, processor, tmp_path):
    """One contrastive loss + backward through CLIPTrainer.compute_loss."""
    args = train.CLIPTrainingArguments(output_dir=str(tmp_path / "t"), report_to="none", eval_strategy="no",
                                       per_device_train_batch_size=2)
    trainer = train.CLIPTrainer(model=model, args=args, processing_class=processor)
    batch = {"pixel_values": torch.randn(2, 3, 32, 32), **processor.tokenizer(TEXTS, padding=True, return_tensors="pt")}
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss


def test_model_name_or_path_loads_a_saved_chinese_clip_with_the_pil_processor(tmp_path):
    torch.manual_seed(0)
    model, processor = build_model(ModelArguments(**SMALL), TEXTS, 32)
    model.save_pretrained(tmp_path / "ckpt")
    processor.save_pretrained(tmp_path / "ckpt")
    cfg = tmp_path / "ckpt/processor_config.json"  # a Hub checkpoint names the torchvision image processor
    data = json.loads(cfg.read_text())
    data["image_processor"]["image_processor_type"] = "ChineseCLIPImageProcessor"
    cfg.write_text(json.dumps(data))
    loaded, proc = build_model(ModelArguments(model_name_or_path=str(tmp_path / "ckpt")), [], 32)
    assert type(proc.image_processor).__name__ == "ChineseCLIPImageProcessorPil"
    pixels = torch.randn(2, 3, 32, 32)
    out = loaded.get_image_features(pixel_values=pixels)
    assert out.pooler_output.shape == (2, 16)  # transformers 5: an output object, the embedding in pooler_output
    torch.testing.assert_close(encode_images(loaded, pixels), encode_images(model.eval(), pixels))
    torch.testing.assert_close(embed_texts(TEXTS, loaded, proc), embed_texts(TEXTS, model, processor))
    assert torch.isfinite(_step(loaded, proc, tmp_path))


def test_dual_encoder_from_pretrained_parts_with_a_frozen_vision_tower(tmp_path):
    torch.manual_seed(0)
    tok = train_tokenizer(TEXTS)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path / "bert")
    tok.save_pretrained(tmp_path / "bert")
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(tmp_path / "vit")
    image_processor_for(32).save_pretrained(tmp_path / "vit")  # a real vision checkpoint ships its preprocessor
    args = ModelArguments(model_type="dual_encoder", vision_model_name_or_path=str(tmp_path / "vit"),
                          text_model_name_or_path=str(tmp_path / "bert"), freeze_vision=True, **{
                              k: v for k, v in SMALL.items() if k == "projection_dim"})
    model, processor = build_model(args, TEXTS, 32)
    assert type(model).__name__ == "VisionTextDualEncoderModel"
    assert all(not p.requires_grad for p in model.vision_model.parameters())
    _step(model, processor, tmp_path)
    assert all(p.grad is None for p in model.vision_model.parameters())
    assert model.visual_projection.weight.grad is not None and model.logit_scale.grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.text_model.parameters())
    model.save_pretrained(tmp_path / "dual")
    processor.save_pretrained(tmp_path / "dual")
    loaded, proc = load_trained(str(tmp_path / "dual"))
    assert type(loaded).__name__ == "VisionTextDualEncoderModel"
    torch.testing.assert_close(embed_texts(TEXTS, loaded, proc), embed_texts(TEXTS, model, processor))


def test_offline_dual_encoder_builds_and_steps(tmp_path):
    model, processor = build_model(ModelArguments(model_type="dual_encoder", **SMALL), TEXTS, 32)
    assert type(model).__name__ == "VisionTextDualEncoderModel" and torch.isfinite(_step(model, processor, tmp_path))


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=16)).save_pretrained(tmp_path / "bert")
    with pytest.raises(SystemExit, match="--model_name_or_path: .* is a BertModel"):
        load_trained(str(tmp_path / "bert"))
