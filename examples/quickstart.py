"""CARTL's engine end to end on scikit-learn's real 8x8 digits, in about a minute on a laptop CPU.

A robust source model learns digits 0-4; it is transferred to digits 5-9 by fine-tuning its last
K blocks three ways (vanilla, NEFT, CARTL = FDM-trained source + NEFT), then attacked twice: with the
paper's PGD-20, and with the kit's headline ensemble (the worst case over large-step PGD, APGD-CE, APGD-T).
"""

import cartl_kit as ck
from cartl_kit.data import dataset_stats, load_dataset, make_loaders

ck.seed_everything(0)
K, LAMBDA, BETA, EPS = 3, 0.01, 0.6, 0.1  # fine-tuned blocks, FDM weight, NEFT bound, attack radius
train_attack = ck.AttackConfig(eps=EPS, step_size=EPS / 3, steps=5)  # PGD-5 for adversarial training
pgd20 = ck.AttackConfig(eps=EPS, step_size=EPS / 4, steps=20)  # the paper's PGD-k for evaluation


def loaders(classes):
    return make_loaders(load_dataset(f"digits[{classes}]", split="train"),
                        load_dataset(f"digits[{classes}]", split="test"), batch_size=64)


(source_train, _), (target_train, target_test) = loaders("0-4"), loaders("5-9")
mean, std = dataset_stats("digits")

# 1. Robust source models: Madry adversarial training (PGD-5), and the same plus FDM at block L-K+1.
teachers = {}
for name, step in [("AT", ck.adversarial_step(attack=train_attack)),
                   ("AT+FDM", ck.fdm_step(k=K, lam=LAMBDA, attack=train_attack))]:
    teachers[name] = ck.create_model("wrn16_1", num_classes=5, in_channels=1, mean=mean, std=std)
    ck.fit(teachers[name], source_train, step, ck.OptimConfig(epochs=8), progress=False)

# 2. Transfer: fine-tune the last K blocks on clean target images; NEFT bounds their spectral norms.
rows = []
for method, teacher, neft in [("vanilla", "AT", False), ("NEFT", "AT", True), ("CARTL", "AT+FDM", True)]:
    student = ck.make_student(teachers[teacher], k=K, num_classes=5, bn_case="vanilla", half_residual=neft)
    if neft:
        ck.apply_neft(student, k=K, beta=BETA)
    ck.fit(student, target_train, ck.natural_step, ck.OptimConfig(epochs=6, base_lr=0.05), progress=False)
    weak = ck.robust_accuracy(student.eval(), target_test, attack=pgd20, progress=False)
    strong = ck.ensemble_accuracy(student, target_test, eps=EPS, progress=False)
    rows.append((method, teacher, strong, weak))

# 3. The table: clean accuracy, and robust accuracy under each attack, on the target's test split.
print(f"{'method':8} {'source':7} {'k':>2} {'clean %':>8} {'ensemble %':>11} {'PGD-20 %':>9}")
for method, teacher, strong, weak in rows:
    print(f"{method:8} {teacher:7} {K:>2} {100 * strong.clean_acc:8.1f} {100 * strong.robust_acc:11.1f} "
          f"{100 * weak.robust_acc:9.1f}")
