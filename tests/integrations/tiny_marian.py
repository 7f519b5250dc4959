"""A tiny randomly initialised Marian model and a toy parallel data set, built offline, and a
Trainer factory for the Hugging Face integration's tests."""
import torch

transformers = __import__("pytest").importorskip("transformers")

VOCAB, PAD, EOS = 40, 0, 1


def tiny_marian(seed=0):
    config = transformers.MarianConfig(
        vocab_size=VOCAB, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, max_position_embeddings=64,
        pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, dropout=0.0, attention_dropout=0.0,
        activation_dropout=0.0, share_encoder_decoder_embeddings=True)
    torch.manual_seed(seed)
    return transformers.MarianMTModel(config)


def toy_pairs(n=16, seed=1):
    """Sentence pairs of different lengths (so per-batch means differ from the whole batch's)."""
    generator = torch.Generator().manual_seed(seed)
    pairs = []
    for i in range(n):
        length = 2 + (i * 5) % 7
        source = torch.randint(2, VOCAB, (length,), generator=generator).tolist()
        target = [VOCAB - 1 - t + 2 if VOCAB - 1 - t + 2 < VOCAB else t for t in source][::-1]
        pairs.append({"input_ids": source + [EOS], "labels": target + [EOS]})
    return pairs


def collate(features):
    """Pads input_ids with PAD and labels with -100; decoder inputs are the labels shifted right."""
    width = max(len(f["input_ids"]) for f in features)
    label_width = max(len(f["labels"]) for f in features)
    input_ids = torch.tensor([f["input_ids"] + [PAD] * (width - len(f["input_ids"])) for f in features])
    labels = torch.tensor([f["labels"] + [-100] * (label_width - len(f["labels"])) for f in features])
    decoder_input_ids = torch.cat([torch.full((len(features), 1), PAD), labels[:, :-1]], dim=1).masked_fill(
        torch.cat([torch.zeros(len(features), 1, dtype=torch.bool), labels[:, :-1].eq(-100)], dim=1), PAD)
    return {"input_ids": input_ids, "attention_mask": input_ids.ne(PAD).long(), "labels": labels,
            "decoder_input_ids": decoder_input_ids}


def training_args(out_dir, **overrides):
    settings = dict(output_dir=str(out_dir), per_device_train_batch_size=4, gradient_accumulation_steps=1,
                    max_steps=4, learning_rate=1e-2, lr_scheduler_type="constant", logging_steps=1,
                    save_strategy="no", report_to=[], seed=0, data_seed=0, use_cpu=True,
                    dataloader_num_workers=0, disable_tqdm=True, weight_decay=0.0)
    settings.update(overrides)
    return transformers.Seq2SeqTrainingArguments(**settings)


def make_trainer(out_dir, compute_loss_func=None, model_seed=0, pairs=None, **overrides):
    trainer = transformers.Seq2SeqTrainer(model=tiny_marian(model_seed), args=training_args(out_dir, **overrides),
                                          train_dataset=pairs if pairs is not None else toy_pairs(),
                                          data_collator=collate, compute_loss_func=compute_loss_func)
    return trainer


def step_logs(trainer, key="loss"):
    """{step: value} of the training logs."""
    return {entry["step"]: entry[key] for entry in trainer.state.log_history if key in entry}


def parameters(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])
