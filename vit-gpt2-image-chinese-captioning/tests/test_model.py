"""The ViT walkthrough of the README, checked against the real modules; special tokens; the checkpoint paths."""
import pytest
import torch
from transformers import (GPT2Config, GPT2LMHeadModel, ViTConfig, ViTImageProcessor, ViTModel,
                          VisionEncoderDecoderModel)

from model import ModelArguments, build_model, caption_images, load_trained, load_tokenizer
from train_tokenizer import train_tokenizer

CAPTIONS = ["蓝色背景上有两个红色的圆形", "一个黄色正方形在白色背景的左边", "图片中间有三个小的绿色菱形，背景是黑色"]


def test_vit_base_shapes_of_the_walkthrough():
    """google/vit-base-patch16-224's config (no weights needed): Conv2d(3, 768, 16, 16) on 224x224 -> (B, 196, 768);
    [CLS] + position embeddings -> (B, 197, 768)."""
    from transformers.models.vit.modeling_vit import ViTEmbeddings
    cfg = ViTConfig()  # the defaults are vit-base-patch16-224's: 224 px, patch 16, 768 wide, 12 layers, 12 heads
    emb = ViTEmbeddings(cfg)
    conv = emb.patch_embeddings.projection
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (3, 768, (16, 16), (16, 16))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        patches = conv(x).flatten(2).transpose(1, 2)
        assert patches.shape == (2, 196, 768)  # (224 / 16)^2 = 196 patches
        assert emb.cls_token.shape == (1, 1, 768) and emb.position_embeddings.shape == (1, 197, 768)
        assert emb(x).shape == (2, 197, 768)  # [CLS] first, + learned positions


def test_small_vit_shapes_step_by_step_and_the_output_used_for_cross_attention():
    """The same walk on the small config, block by block, through to the decoder's cross-attention."""
    margs = ModelArguments(image_size=32, patch_size=8, encoder_hidden_size=64, decoder_hidden_size=48,
                           encoder_layers=2, decoder_layers=1, num_attention_heads=2)
    tok = train_tokenizer(CAPTIONS)
    model = build_model(margs, tok).eval()
    vit = model.encoder
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        patches = vit.embeddings.patch_embeddings(x)
        assert patches.shape == (3, 16, 64)  # (32 / 8)^2 patches, each projected to 64
        h = vit.embeddings(x)
        assert h.shape == (3, 17, 64)  # + [CLS]
        for block in vit.layers:  # pre-LayerNorm attention + MLP, residuals: the shape is kept
            h = block(h)
            h = h[0] if isinstance(h, tuple) else h
            assert h.shape == (3, 17, 64)
        last = vit.layernorm(h)
        assert torch.allclose(last, vit(pixel_values=x).last_hidden_state, atol=1e-5)
        # every decoder position attends to all 17 encoder states; the 64-wide states are projected to the
        # decoder's 48 (enc_to_dec_proj) because the widths differ
        assert model.enc_to_dec_proj.in_features == 64 and model.enc_to_dec_proj.out_features == 48
        labels = torch.tensor(tok(["蓝色背景"], add_special_tokens=False).input_ids * 3)
        seen = []
        cross = model.decoder.transformer.h[0].crossattention
        hook = cross.register_forward_pre_hook(
            lambda mod, args, kwargs: seen.append(kwargs.get("encoder_hidden_states", args[1] if len(args) > 1
                                                             else None)), with_kwargs=True)
        out = model(pixel_values=x, labels=labels)
        hook.remove()
        assert out.encoder_last_hidden_state.shape == (3, 17, 64)
        assert seen and seen[0].shape == (3, 17, 48)  # what the cross-attention keys/values are computed from


def test_special_tokens_agree_and_generate_starts_with_cls():
    tok = train_tokenizer(CAPTIONS)
    model = build_model(ModelArguments(image_size=32, patch_size=8, encoder_hidden_size=32, decoder_hidden_size=32,
                                       encoder_layers=1, decoder_layers=1, num_attention_heads=2), tok).eval()
    g = model.generation_config
    assert (g.decoder_start_token_id, g.eos_token_id, g.pad_token_id) == (tok.cls_token_id, tok.sep_token_id,
                                                                          tok.pad_token_id)
    assert model.config.pad_token_id == tok.pad_token_id and model.config.decoder_start_token_id == tok.cls_token_id
    out = model.generate(pixel_values=torch.randn(2, 3, 32, 32), max_new_tokens=5)
    assert (out[:, 0] == tok.cls_token_id).all() and out.max() < len(tok)


def _halves(tmp_path):
    """Tiny ViT / GPT-2 / tokenizer saved with save_pretrained: stand-ins for google/vit-base-patch16-224 and
    uer/gpt2-chinese-cluecorpussmall."""
    tok = train_tokenizer(CAPTIONS)
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64), add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=40, n_embd=32, n_layer=1, n_head=2)
                    ).save_pretrained(tmp_path / "gpt2")
    tok.save_pretrained(tmp_path / "gpt2")
    return tmp_path / "vit", tmp_path / "gpt2"


def test_real_checkpoint_path_with_tiny_saved_halves_and_save_load_round_trip(tmp_path):
    vit, gpt2 = _halves(tmp_path)
    margs = ModelArguments(encoder_name_or_path=str(vit), decoder_name_or_path=str(gpt2))
    tok = load_tokenizer(margs, [])
    from model import load_image_processor
    proc = load_image_processor(margs)
    model = build_model(margs, tok).eval()
    assert model.config.decoder.add_cross_attention and model.config.decoder.is_decoder
    assert model.generation_config.decoder_start_token_id == tok.cls_token_id
    labels = torch.tensor(tok(["蓝色背景"], add_special_tokens=False).input_ids)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.isfinite(model(pixel_values=x, labels=labels).loss)
    # save -> load: the same weights, special tokens and captions
    out = tmp_path / "saved"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    proc.save_pretrained(out)
    assert (out / "model.safetensors").is_file()
    model2, tok2, proc2 = load_trained(out)
    from PIL import Image
    images = [Image.new("RGB", (40, 40), (200, 30, 30)), Image.new("RGB", (32, 32), (20, 20, 200))]
    assert caption_images(images, model, tok, proc, max_new_tokens=6) == \
        caption_images(images, model2, tok2, proc2, max_new_tokens=6)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x, labels=labels).logits, model2(pixel_values=x, labels=labels).logits)
    # the whole saved model is also a --model_name_or_path
    model3 = build_model(ModelArguments(model_name_or_path=str(out)), load_tokenizer(
        ModelArguments(model_name_or_path=str(out)), []))
    assert isinstance(model3, VisionEncoderDecoderModel)


def test_decoder_with_a_tokenizer_without_cls_fails_with_one_line(tmp_path):
    from transformers import PreTrainedTokenizerFast
    vit, gpt2 = _halves(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(gpt2)
    tok.cls_token = None
    tok.save_pretrained(tmp_path / "nocls")
    with pytest.raises(SystemExit, match="--decoder_name_or_path: its tokenizer has no cls_token"):
        load_tokenizer(ModelArguments(decoder_name_or_path=str(tmp_path / "nocls")), [])


def test_small_vit_position_embeddings_start_from_the_2d_sincos_table():
    """--position_init sincos: row 1 + r * grid + c holds sin/cos of r (first half) and c (second half); [CLS] zero."""
    import torch
    from model import ModelArguments, small_vit
    args = ModelArguments(image_size=32, patch_size=8, encoder_hidden_size=16, num_attention_heads=2)
    table = small_vit(args).embeddings.position_embeddings[0].detach()
    assert table.shape == (1 + 16, 16) and torch.equal(table[0], torch.zeros(16))
    r, c = 2, 3
    omega = 1.0 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    want = torch.cat([torch.sin(r * omega), torch.cos(r * omega), torch.sin(c * omega), torch.cos(c * omega)])
    assert torch.allclose(table[1 + r * 4 + c], want.float(), atol=1e-6)
    torch.manual_seed(0)
    random = small_vit(ModelArguments(**{**vars(args), "position_init": "random"})).embeddings.position_embeddings
    assert random.std().item() < 0.05  # ViT's N(0, 0.02), no spatial structure
