"""torchvision's modules as torchvision writes them (torchvision/models/{resnet,vgg,
alexnet}.py, same module names, same forward), for tests/test_pretrained.py: PyPI's
torchvision does not install beside this torch. Importing this needs PyTorch.
"""
import torch

nn = torch.nn


def conv3x3(i, o, stride=1, groups=1):
  return nn.Conv2d(i, o, 3, stride, padding=1, groups=groups, bias=False)


def conv1x1(i, o, stride=1):
  return nn.Conv2d(i, o, 1, stride, bias=False)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
    super().__init__()
    self.conv1 = conv3x3(inplanes, planes, stride)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = conv3x3(planes, planes)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64):
    super().__init__()
    width = int(planes * (base_width / 64.0)) * groups
    self.conv1 = conv1x1(inplanes, width)
    self.bn1 = nn.BatchNorm2d(width)
    self.conv2 = conv3x3(width, width, stride, groups)
    self.bn2 = nn.BatchNorm2d(width)
    self.conv3 = conv1x1(width, planes * self.expansion)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x):
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    identity = x if self.downsample is None else self.downsample(x)
    return self.relu(out + identity)


class ResNet(nn.Module):
  def __init__(self, block, layers, num_classes=1000, groups=1, width_per_group=64):
    super().__init__()
    self.inplanes, self.groups, self.base_width = 64, groups, width_per_group
    self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    self.layer1 = self._make_layer(block, 64, layers[0])
    self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
    self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
    self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc = nn.Linear(512 * block.expansion, num_classes)

  def _make_layer(self, block, planes, blocks, stride=1):
    downsample = None
    if stride != 1 or self.inplanes != planes * block.expansion:
      downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                 nn.BatchNorm2d(planes * block.expansion))
    layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width)]
    self.inplanes = planes * block.expansion
    layers += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width)
               for _ in range(1, blocks)]
    return nn.Sequential(*layers)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(torch.flatten(self.avgpool(x), 1))


VGG_CFGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512,
          512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
  def __init__(self, cfg, batch_norm, num_classes=1000):
    super().__init__()
    layers, c = [], 3
    for v in VGG_CFGS[cfg]:
      if v == "M":
        layers += [nn.MaxPool2d(kernel_size=2, stride=2)]
      else:
        conv = nn.Conv2d(c, v, kernel_size=3, padding=1)
        layers += [conv, nn.BatchNorm2d(v), nn.ReLU(True)] if batch_norm else [
            conv, nn.ReLU(True)]
        c = v
    self.features = nn.Sequential(*layers)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(),
        nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(), nn.Linear(4096, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class AlexNet(nn.Module):
  def __init__(self, num_classes=1000):
    super().__init__()
    self.features = nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2))
    self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
    self.classifier = nn.Sequential(
        nn.Dropout(), nn.Linear(256 * 6 * 6, 4096), nn.ReLU(inplace=True),
        nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


RESNETS = {18: (BasicBlock, (2, 2, 2, 2)), 34: (BasicBlock, (3, 4, 6, 3)),
           50: (Bottleneck, (3, 4, 6, 3)), 101: (Bottleneck, (3, 4, 23, 3)),
           152: (Bottleneck, (3, 8, 36, 3))}
RESNET_VARIANTS = {"resnext50_32x4d": (50, 32, 4), "resnext101_32x8d": (101, 32, 8),
                   "resnext101_64x4d": (101, 64, 4), "wide_resnet50_2": (50, 1, 128),
                   "wide_resnet101_2": (101, 1, 128)}


def torchvision_model(name, num_classes=1000):
  """torchvision.models.<name>(num_classes=...) for the names cnn.pretrained supports."""
  if name.startswith("resnet"):
    block, layers = RESNETS[int(name[len("resnet"):])]
    return ResNet(block, layers, num_classes)
  if name in RESNET_VARIANTS:
    depth, groups, wpg = RESNET_VARIANTS[name]
    block, layers = RESNETS[depth]
    return ResNet(block, layers, num_classes, groups=groups, width_per_group=wpg)
  if name.startswith("vgg"):
    base = name.removesuffix("_bn")
    cfg = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[base]
    return VGG(cfg, name.endswith("_bn"), num_classes)
  assert name == "alexnet", name
  return AlexNet(num_classes)


def randomized(model, seed=0):
  """`model` in eval mode with random weights and BN statistics far from (0, 1), so
  that scale, shift, mean and variance each change the logits."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5, generator=g)
        m.bias.normal_(0.0, 0.2, generator=g)
        m.running_mean.normal_(0.0, 0.2, generator=g)
        m.running_var.uniform_(0.5, 2.0, generator=g)
      elif isinstance(m, (nn.Conv2d, nn.Linear)):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=g)
        if m.bias is not None:
          m.bias.normal_(0.0, 0.1, generator=g)
  return model.eval()
