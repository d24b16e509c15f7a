"""Page faults per teacher training step on the CPU: `python page_faults.py keep|default`."""
import resource, sys, torch, torch.nn.functional as F
if sys.argv[1] == "keep":
    from kd_accel.memory import keep_freed_memory
    keep_freed_memory(env={})
from kd_accel.models import Teacher
torch.manual_seed(0)
m = Teacher().to(memory_format=torch.channels_last)
opt = torch.optim.Adam(m.parameters(), 1e-3)
x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))
def step():
    F.cross_entropy(m(x), y).backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(3): step()
f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10): step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / 10)
