"""Language-model slate policy: item text encoder, state encoder, slate decoder, SB3 policy, CE pretraining, metrics."""
